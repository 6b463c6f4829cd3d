"""Engine adapters behind one interface (base.Engine), looked up by name in registry."""
