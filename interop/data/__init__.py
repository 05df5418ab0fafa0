"""The data pipeline, numpy only, shared by both backends so they see the same batches.

    DataConfig.sources
      -> sources.file_rows          files -> validated rows in chunks, each remembering file:line
      -> examples.tokenize_rows     render per format, tokenize (batch encoding), prompt lengths
      -> token_cache.cached_table   once per file into memory-mapped arrays (a TokenTable)
      -> split.phase_indices        DeepSpeed-Chat's data_split share for the phase
      -> sources.weighted           blend several sources by weight
      -> token_table.ExampleList    the chosen rows as indices; examples built on demand
      -> batches.Batches            pad or pack to [batch, seq_len]; batch(step) is pure

`pipeline.build_datasets` runs all but the last for train and eval; `tokenizer` loads,
prepares (DeepSpeed-Chat's pad/eot rules) or trains the tokenizer they use.
"""
