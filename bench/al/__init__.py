"""The active-learning study of ntkal: which pool structures to label next when fine-tuning CHGNet, by
strategy, on offline data labelled by a reference method. A package that calls the product (``ntkal.acquire``,
``ntkal.features.Precomputed``, ``ntkal.strata``, ``ntkal.torch.Loss``) and never re-implements it.

Modules: :mod:`.scenarios` (the labelled data, by name), :mod:`.data` / :mod:`.copper` (the scenarios' data),
:mod:`.model` (CHGNet fine-tuning and errors), :mod:`.features` (pool features, computed once per run),
:mod:`.strategies` (the strategies, by name), :mod:`.loop` (one learning curve), :mod:`.runner` (many, in
worker processes, resumable), :mod:`.report` (aggregates, plots), :mod:`.study` (the command line:
``python -m al``), :mod:`.first_batch` (the cheap first-batch screen). See bench/al/README.md.
"""
