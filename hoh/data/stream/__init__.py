"""Streaming ingestion: images from a message broker into the same spans `hoh data import` makes.

contract (what a message is) <- broker (one small interface; nats, kafka) <- openspan (durable
micro-batches, sealing) <- consumer (the loop: backpressure, dead letters, acks, metrics) and
publisher (`hoh publish`). docs/INGESTION.md has the guarantees and how it scales out.
"""
