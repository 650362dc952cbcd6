"""The `firstepoch` command's Typer apps and console, which every command group registers on."""
import typer
from rich.console import Console

app = typer.Typer(help="firstepoch: train, evaluate, predict and export deep-learning models, locally.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
train_app = typer.Typer(help="Train a model on your data.", no_args_is_help=True)
app.add_typer(train_app, name="train")
console = Console(soft_wrap=True)
