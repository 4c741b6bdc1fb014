"""The nnd compiler: parsing, checking, lowering to IR, graph passes and autodiff."""
