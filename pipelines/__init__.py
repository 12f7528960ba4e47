"""KFP pipelines over the components in components/: thin wiring, no logic."""
