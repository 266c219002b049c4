"""tf-hybrid-pruning: data-free compression of Keras CNNs into LiteRT models running our
sparse HybridSparseConv2D op."""
