"""Rebuilding the bundled proxies (``hybridsearch pretrain``) from data that ships with Debian packages: the
``vim-proxy`` backbone (Fashion-MNIST), the ``mamba-proxy`` byte-level LM and the ``commonsense_proxy`` task set
(both from WordNet). The results are committed under ``hybridsearch/assets``; nothing here runs in a search."""
