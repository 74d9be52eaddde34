from xsyn.export import tokenizer as tok


def test_class_words_are_single_tokens_and_specials_are_last(tmp_path):
    folder = tok.write_tokenizer_files(tmp_path / "t")
    t = tok.load_tokenizer(folder)
    ids = tok.tokenizer_ids(folder)
    assert ids["eos_token_id"] == ids["vocab_size"] - 1  # legacy argmax pooling also finds EOS
    enc = t(["Knife", "a Gun"], padding="max_length", max_length=tok.MAX_LENGTH, truncation=True)
    assert t.convert_ids_to_tokens(enc["input_ids"][0][:3]) == ["<|startoftext|>", "knife</w>", "<|endoftext|>"]
    assert t.convert_ids_to_tokens(enc["input_ids"][1][1:3]) == ["a</w>", "gun</w>"]
    assert all(len(row) == 77 for row in enc["input_ids"])


def test_long_prompts_are_truncated_to_77(tmp_path):
    t = tok.load_tokenizer(tok.write_tokenizer_files(tmp_path / "t"))
    enc = t(["knife " * 200], padding="max_length", max_length=tok.MAX_LENGTH, truncation=True)
    assert len(enc["input_ids"][0]) == 77


def test_vocabulary_is_deterministic(tmp_path):
    a = tok.write_tokenizer_files(tmp_path / "a")
    b = tok.write_tokenizer_files(tmp_path / "b")
    assert (a / "vocab.json").read_bytes() == (b / "vocab.json").read_bytes()
    assert (a / "merges.txt").read_bytes() == (b / "merges.txt").read_bytes()
