"""The configuration of a speedrun GPT in transformers (written by `speedrun export`).

Each field is the `model.*` key of speedrun's config with the same name; transformers'
usual names (hidden_size, num_hidden_layers, ...) read the same values."""

from transformers import PretrainedConfig


class SpeedrunConfig(PretrainedConfig):
    model_type = "speedrun"
    attribute_map = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
                     "max_position_embeddings": "block_size"}

    def __init__(self, vocab_size: int = 256, n_layer: int = 1, n_head: int = 1, n_embd: int = 64,
                 block_size: int = 64, mlp_ratio: int = 4, pos: str = "rope", norm: str = "rmsnorm",
                 qk_norm: bool = False, mlp: str = "relu2", bias: bool = False, smear: bool = False,
                 bigram: bool = False, value_embeddings: bool = False, logit_softcap: float = 0.0,
                 rope_theta: float = 10000.0, tie_word_embeddings: bool = False, **kwargs):
        self.vocab_size, self.n_layer, self.n_head, self.n_embd = vocab_size, n_layer, n_head, n_embd
        self.block_size, self.mlp_ratio, self.pos, self.norm = block_size, mlp_ratio, pos, norm
        self.qk_norm, self.mlp, self.bias = qk_norm, mlp, bias
        self.smear, self.bigram, self.value_embeddings = smear, bigram, value_embeddings
        self.logit_softcap, self.rope_theta = logit_softcap, rope_theta
        self.num_key_value_heads = n_head
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
