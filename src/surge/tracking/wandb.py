"""Weights & Biases, as Accelerate starts it: ``wandb.init(project=<project name>,
**init_kwargs)``, so its files go where wandb puts them (``WANDB_DIR``, else ``./wandb``;
``init_kwargs={"wandb": {"dir": ...}}`` to choose). Offline with ``WANDB_MODE=offline``
(``wandb sync`` later); online it needs ``wandb login`` or ``WANDB_API_KEY``."""

from __future__ import annotations

from typing import Any

from surge.tracking.base import GeneralTracker, on_main_process, plain, scalar

INSTALL = "pip install wandb  (or: pip install 'surge[wandb]')"


class WandBTracker(GeneralTracker):
    """Accelerate's ``WandBTracker(run_name, **kwargs)`` (``kwargs`` go to ``wandb.init``).
    Its methods run on whichever process calls them (``main_process_only = False``, as
    Accelerate's); ``init_trackers`` and ``log`` call them on the main process only."""

    name = "wandb"
    requires_logging_directory = False
    main_process_only = False

    def __init__(self, run_name: str, **kwargs: Any) -> None:
        super().__init__()
        self.run_name = run_name
        self.init_kwargs = kwargs

    @on_main_process
    def start(self) -> None:
        try:
            import wandb
        except ImportError:
            raise ImportError(f"log_with='wandb' needs the wandb package: {INSTALL}") from None
        self.run = wandb.init(project=self.run_name, **self.init_kwargs)

    @property
    def tracker(self) -> Any:
        return self.run

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        self.run.config.update(plain(values), allow_val_change=True)  # type: ignore[no-untyped-call]  # unannotated

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        self.run.log({k: scalar(v) for k, v in values.items()}, step=step, **kwargs)

    @on_main_process
    def log_images(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        """Each name's list of images (arrays or PIL images) as ``wandb.Image`` objects."""
        import wandb

        for name, images in values.items():
            self.log({name: [wandb.Image(image) for image in images]}, step=step, **kwargs)

    @on_main_process
    def log_table(self, table_name: str, columns: list[Any] | None = None, data: list[list[Any]] | None = None,
                  dataframe: Any = None, step: int | None = None, **kwargs: Any) -> None:
        """A ``wandb.Table`` from ``columns`` + ``data`` or from ``dataframe``."""
        import wandb

        self.log({table_name: wandb.Table(columns=columns, data=data, dataframe=dataframe)}, step=step, **kwargs)

    @on_main_process
    def finish(self) -> None:
        self.run.finish()
