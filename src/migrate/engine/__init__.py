"""The engine: sequencing of side effects for run and rollback."""
