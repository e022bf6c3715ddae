"""Evaluations: the task registry and its settings (``tasks``), MGSM generation (``mgsm``), multiple choice by
log-likelihood (``multiple_choice``), and per-item results with their accuracy tables (``results``)."""
