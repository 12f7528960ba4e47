"""The promote stage as a KFP component."""
