"""The filter stage as a KFP component."""
