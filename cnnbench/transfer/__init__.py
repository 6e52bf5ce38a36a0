"""Transfer learning: start from trained weights, freeze what should not move, train the rest."""
