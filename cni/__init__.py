"""berth: CNI protocol core and the bridge plugin."""

__version__ = "0.1.0"
