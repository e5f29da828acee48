"""Pure functions over tensors. Nothing here imports optuna, typer or jax."""
