"""Ablations: arms x datasets x seeds grids (``spec``) run through the shared trial layer (``runner``)."""
