"""The validate stage as a KFP component."""
