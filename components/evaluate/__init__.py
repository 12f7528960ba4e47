"""The evaluate stage as a KFP component."""
