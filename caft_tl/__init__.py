"""caft-tl: Concept Ablation Fine-Tuning and train-time steering on TransformerLens hook points."""
__version__ = "0.1.0"
