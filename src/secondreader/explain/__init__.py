"""Saliency heatmaps on the source pixel grid and the regions drawn from them."""
