"""Training and evaluation loops, one per model kind; they know models and PEFT methods, not searches:

* ``recipe``: a trial's ``Recipe``, its optimizer and learning-rate schedule;
* ``classifier``: the image-classifier loop (Vim trials, vim-proxy pretraining, the winner's retraining);
* ``lm``: the MambaPEFT / LLM-Adapters recipe for a Mamba LM (``LMRecipe``, ``train_lm``);
* ``lm_eval``: commonsense evaluation by likelihood ranking or greedy generation;
* ``lm_loading``: an LM with its tokenizer (and saved adapters) by name or checkpoint directory;
* ``harness`` (+ ``harness_lm``, ``lm_eval_tasks/``): the LMs as lm-evaluation-harness's model ``hybridsearch``,
  with offline tasks over the bundled commonsense files (lm-eval is imported only there, on first use).
"""
