"""Glass box: what the model does inside, as plain data (dicts, lists, numpy arrays).

Each view takes an `LLM` (or its tokenizer) and returns the same dict the CLI renders as a
table and prints with `--json`; plots.py draws the pictures. Nothing here changes the model.

    tokens.tokenize_view / compare_view     pieces, ids, bytes, tokens per word
    next_token.next_token_view              next-token distribution per temperature and filter
    lens.logit_lens                         the top token read from every layer's hidden state
    attention.attention_weights / _view     softmax(QKᵀ/√d + causal mask) of the real forward pass
    embeddings.embed_view / analogy_view    text embeddings; A − B + C in token-embedding space
    variability.sample_view / variability   several samples per temperature and how much they differ
"""
