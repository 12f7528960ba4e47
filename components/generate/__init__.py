"""The generate stage as a KFP component."""
