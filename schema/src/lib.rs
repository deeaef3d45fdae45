//! Delegate blob format (see docs/DESIGN.md). Filled in by the schema issue.
