"""End-to-end test infrastructure for agentfleet (not part of the operator package)."""
