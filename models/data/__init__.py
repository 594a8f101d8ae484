"""Data: the byte corpus, documents, token shards, tokenizers, mixtures; ``corpus.open_corpus`` opens any of them."""
