"""The split stage as a KFP component."""
