"""The rl stage as a KFP component."""
