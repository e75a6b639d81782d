"""kai-rpc: the settings bridge between an IDE and the Kai analysis worker."""

__version__ = "0.1.0"
