#!/usr/bin/env python3
"""Writes a tiny llama-architecture model as GGUF, with random weights and a small vocabulary,
for the end-to-end test that runs a real llama-server: nothing is downloaded at run time.

Usage: tiny_gguf.py OUT.gguf [SEED]  (needs the PyPI packages gguf and numpy on PYTHONPATH)

The vocabulary is SentencePiece-like: <unk>, <s>, </s>, the 256 byte tokens and a few
words, so any text tokenizes (through bytes) and any sampled token detokenizes.
"""

import sys

import gguf
import numpy as np

VOCAB_WORDS = ["\u2581the", "\u2581a", "\u2581star", "\u2581count", "\u2581is", "\u2581one", "\u2581two"]
EMBED = 64
LAYERS = 2
HEADS = 4
HEADS_KV = 4
FFN = 128
CONTEXT = 512


def main():
    out = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(out, "llama")
    w.add_name("qs-tiny")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(EMBED)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS_KV)
    w.add_rope_dimension_count(EMBED // HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    tokens, scores, types = [], [], []
    for t, ty in (("<unk>", gguf.TokenType.UNKNOWN), ("<s>", gguf.TokenType.CONTROL),
                  ("</s>", gguf.TokenType.CONTROL)):
        tokens.append(t.encode())
        scores.append(0.0)
        types.append(ty)
    for b in range(256):
        tokens.append(f"<0x{b:02X}>".encode())
        scores.append(0.0)
        types.append(gguf.TokenType.BYTE)
    for i, word in enumerate(VOCAB_WORDS):
        tokens.append(word.encode())
        scores.append(-float(i))
        types.append(gguf.TokenType.NORMAL)
    vocab = len(tokens)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )

    def tensor(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    def ones(name, n):
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    tensor("token_embd.weight", vocab, EMBED)
    ones("output_norm.weight", EMBED)
    tensor("output.weight", vocab, EMBED)
    kv = EMBED // HEADS * HEADS_KV
    for i in range(LAYERS):
        ones(f"blk.{i}.attn_norm.weight", EMBED)
        tensor(f"blk.{i}.attn_q.weight", EMBED, EMBED)
        tensor(f"blk.{i}.attn_k.weight", kv, EMBED)
        tensor(f"blk.{i}.attn_v.weight", kv, EMBED)
        tensor(f"blk.{i}.attn_output.weight", EMBED, EMBED)
        ones(f"blk.{i}.ffn_norm.weight", EMBED)
        tensor(f"blk.{i}.ffn_gate.weight", FFN, EMBED)
        tensor(f"blk.{i}.ffn_up.weight", FFN, EMBED)
        tensor(f"blk.{i}.ffn_down.weight", EMBED, FFN)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
