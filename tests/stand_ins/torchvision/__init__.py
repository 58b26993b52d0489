"""Stand-in torchvision for importing zennit in tests; see ../README.md."""
