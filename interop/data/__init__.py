"""The data pipeline, numpy only, shared by both backends so they see the same batches.

    DataConfig.sources
      -> sources.read_source   files -> validated rows, each remembering file:line
      -> split.phase_indices   DeepSpeed-Chat's data_split share for the phase
      -> sources.weighted      blend several sources by weight
      -> examples.make_examples render per format, tokenize, mask labels (-100)
      -> batches.Batches       pad or pack to [batch, seq_len]; batch(step) is pure

`pipeline.build_datasets` runs the first four for train and eval; `tokenizer` loads,
prepares (DeepSpeed-Chat's pad/eot rules) or trains the tokenizer they use.
"""
