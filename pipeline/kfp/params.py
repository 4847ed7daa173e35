"""Run parameters of a compiled pipeline: what a package declares, and `--param` -> values.

Kubeflow's v2 compiler substitutes whole exec properties only, so span, epochs and thresholds
live inside JSON parameters (`range_config`, `trainer_config`, `eval_config`). Shortcuts such as
`--param epochs=5` rebuild the parameter from the config they were compiled from, so the config
stays the one source of truth and nothing else in that JSON is silently reverted.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import yaml

from hoh.errors import HohError

# `--param NAME=VALUE` shortcuts: each changes one config key whose effect lies entirely inside
# one pipeline parameter (transform.image_size, say, also shapes Transform, so it is not here).
# `span` needs no config: see span_parameter.
PARAMETER_ALIASES = {
    "epochs": "training.epochs",
    "batch_size": "training.batch_size",
    "learning_rate": "training.learning_rate",
    "min_auc": "evaluation.min_auc",
    "min_accuracy": "evaluation.min_accuracy",
    "max_regression": "evaluation.max_regression",
}


@dataclasses.dataclass(frozen=True)
class Package:
    """What `hoh kfp submit` needs to know about a compiled pipeline.yaml."""

    name: str
    parameters: Dict[str, Any]  # name -> default value


def read_package(package: str) -> Package:
    try:
        spec = yaml.safe_load(Path(package).read_text(encoding="utf-8"))
        parameters = spec["root"].get("inputDefinitions", {}).get("parameters", {})
        name = spec["pipelineInfo"]["name"]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise HohError(f"--package {package}: not a compiled pipeline spec ({exc})") from None
    return Package(name, {key: p.get("defaultValue") for key, p in parameters.items()})


def span_parameter(span: str) -> str:
    """`--param span=N|latest` -> the range_config parameter the compiled pipeline expects."""
    from tfx.utils import proto_utils

    from hoh.pipeline.factory import span_range_config

    text = span.strip().lower()
    if text != "latest" and not text.isdigit():
        raise HohError(f"--param span={span}: expected a span number or 'latest'")
    config = span_range_config(None if text == "latest" else int(text), explicit_latest=True)
    return proto_utils.proto_to_json(config)


def parameter_values(
    given: Mapping[str, str],
    package_defaults: Mapping[str, Any],
    defaults_for: Optional[Callable[[list[str]], Dict[str, str]]] = None,
) -> Dict[str, str]:
    """`--param` values -> the run's pipeline parameters.

    A pipeline parameter name passes as given. An alias (PARAMETER_ALIASES) is applied to the
    config as `--set key=value`; `defaults_for(overrides)` rebuilds the parameter defaults from
    that config, and the parameters it changed are sent. The config must be the one the package
    was compiled from, else a JSON parameter would silently revert other settings: that is
    checked against the package's defaults before anything is sent.
    """
    values: Dict[str, str] = {}
    overrides: list[str] = []
    for name, value in given.items():
        if name in package_defaults:
            values[name] = value
        elif name == "span":
            values["range_config"] = span_parameter(value)
        elif name in PARAMETER_ALIASES:
            overrides.append(f"{PARAMETER_ALIASES[name]}={value}")
        else:
            known = sorted(package_defaults) + sorted([*PARAMETER_ALIASES, "span"])
            raise HohError(
                f"--param {name}: the pipeline has no such parameter; known: {', '.join(known)}"
            )
    if overrides:
        if defaults_for is None:
            raise HohError("--param aliases need the config the pipeline was compiled from")
        base, changed = defaults_for([]), defaults_for(overrides)
        for name, value in changed.items():
            if value == base.get(name):
                continue
            if name in package_defaults and package_defaults[name] != base.get(name):
                raise HohError(
                    f"--param {', '.join(o.split('=')[0] for o in overrides)}: the config given "
                    f"does not produce the package's default for {name!r}; pass the --config "
                    "the package was compiled from (or set the parameter itself)"
                )
            values.setdefault(name, value)
    missing = sorted(set(values) - set(package_defaults))
    if missing:
        raise HohError(f"the pipeline has no parameter {', '.join(missing)} (an older package?)")
    return values


def describe_parameters(defaults: Mapping[str, Any]) -> list[str]:
    """One line per parameter for `hoh kfp compile` to print (JSON values shortened)."""
    lines = []
    for name, value in sorted(defaults.items()):
        text = value if isinstance(value, str) else json.dumps(value)
        try:
            text = json.dumps(json.loads(text), separators=(",", ":"))
        except ValueError:
            pass  # a plain string such as a path
        lines.append(f"  {name} = {text if len(text) <= 60 else text[:57] + '...'}")
    return lines
