"""The InternVL-family VLM: building, loading, inference, its tokenizer and pretrained weights."""
