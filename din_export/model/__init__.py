"""The Deep Interest Network: its layers (layers.py) and the model that wires them (din.py)."""
