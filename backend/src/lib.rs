//! ExecuTorch backend (see docs/DESIGN.md). Filled in by the backend issue.
