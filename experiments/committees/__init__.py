"""Committee files: members, vote rule and test-time views fixed in advance (mnist_cnn/committee_config.py)."""
