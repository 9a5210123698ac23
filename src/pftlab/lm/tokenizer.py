"""A byte-level BPE trained on the training text and saved in Hugging Face format, and the project's
special tokens (a pretrained tokenizer gets the same PAD: hub.pretrained_tokenizer). Light to import:
tokenizers and transformers load only when a tokenizer is trained."""
EOS = "<|endoftext|>"
PAD = "<|pad|>"  # distinct from EOS so a reward model can find the last real token of a response


def train_tokenizer(texts, vocab_size: int):
    """A PreTrainedTokenizerFast with EOS and PAD as its special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, pad_token=PAD)
