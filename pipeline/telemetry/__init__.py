"""What a run did: progress lines, peak memory per component, and the summary read back
from MLMD."""
