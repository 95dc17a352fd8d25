"""``alzaudit train`` and ``alzaudit evaluate``."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options that describe how to feed and read a model trained elsewhere."""
    p.add_argument("--input-scale", type=float, default=255.0, choices=[255.0, 1.0],
                   help="the model's input range: 255 = raw [0,255] pixels (default), 1 = [0,1]")
    p.add_argument("--classes", default="canonical",
                   help="the model's output order: canonical (NonDemented,VeryMildDemented,MildDemented,"
                        "ModerateDemented), alphabetical (Keras directory loaders), or a comma-separated list")
    p.add_argument("--unsafe-load", action="store_true",
                   help="allow models with Lambda layers / custom code (runs code from the file: trust it first)")


def register(top, data) -> None:
    p = top.add_parser("train", help="two-phase training (frozen backbone, then fine-tuning), resumable")
    p.add_argument("--data", required=True, help="dataset folder or manifest.csv (split subject-aware if unsplit)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, config.json, model.keras)")
    p.add_argument("--backbone", choices=["resnet50", "small"], default="small")
    p.add_argument("--weights", default=None, help="imagenet, none (default) or a local weights file")
    p.add_argument("--input-size", type=int, default=None, help="square input size (default 224 resnet50, 128 small)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="examples per replica per step; the global batch is this x the replicas of --strategy "
                        "(divide by the replica count to reproduce a one-device run)")
    p.add_argument("--strategy", choices=["auto", "one", "mirrored", "multiworker"], default="auto",
                   help="tf.distribute strategy: auto (mirrored when more than one GPU is visible, else one "
                        "device), one, mirrored (every local GPU), multiworker (hosts in TF_CONFIG; run the "
                        "same command on every host)")
    p.add_argument("--dropout", type=float, default=0.5, help="dropout rate before the classification head")
    p.add_argument("--average-last", type=int, default=0, metavar="N",
                   help="a phase's model is the average of its last N epochs' weights (0: its best epoch by "
                        "val_loss); steadier than picking an epoch on a small validation split")
    p.add_argument("--epochs1", type=int, default=10, help="phase 1 epoch limit (frozen backbone)")
    p.add_argument("--epochs2", type=int, default=20, help="phase 2 epoch limit (fine-tuning)")
    p.add_argument("--lr1", type=float, default=1e-4)
    p.add_argument("--lr2", type=float, default=None, help="phase 2 learning rate (default 1e-5 after a frozen "
                                                           "phase 1, 1e-3 when training from scratch)")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience on validation loss")
    p.add_argument("--class-weight", choices=["none", "balanced"], default="none")
    p.add_argument("--phases", default="auto", help="auto (default), 1, 2 or 1,2")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                   help="constant learning rate per phase (the reference method) or cosine decay over the phase")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--flip", choices=("horizontal_and_vertical", "horizontal", "none"),
                   default="horizontal_and_vertical",
                   help="augmentation flips: both ways as the reference method, or only left-right")
    p.add_argument("--augment-intensity", action="store_true",
                   help="scanner augmentation: a random gamma, gain and smooth bias field per image")
    p.add_argument("--no-precise-bn", action="store_true",
                   help="keep the BatchNormalization statistics training left (default: re-estimate them over one "
                        "pass of the training pipeline after each phase in which they trained)")
    p.add_argument("--augment-noise", type=float, default=0.0,
                   help="add Gaussian noise (fraction of the intensity range, e.g. 0.05) to the augmentation")
    p.add_argument("--ratios", default="0.7,0.15,0.15", help="train,val,test when the data has no split")
    p.add_argument("--group", choices=["subject", "pseudo", "slice"], default="subject",
                   help="how to split unsplit data (slice is leaky; for demonstrations)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.set_defaults(func=run_train)

    p = top.add_parser("evaluate", help="predictions.csv and metrics.json with subject-level bootstrap CIs")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="dataset folder or manifest.csv")
    p.add_argument("--split", default="test")
    p.add_argument("--out", help="folder for predictions.csv and metrics.json (default: beside the model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    add_model_options(p)
    p.set_defaults(func=run_evaluate)


def run_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from model.train import TrainConfig, train

    weights = None if args.weights in (None, "none") else args.weights
    input_size = args.input_size or (224 if args.backbone == "resnet50" else 128)
    lr2 = args.lr2 if args.lr2 is not None else (1e-5 if weights else 1e-3)
    for name in ("batch_size", "epochs1", "epochs2", "patience", "average_last"):
        if getattr(args, name) < (1 if name not in ("patience", "average_last") else 0) and not (name.startswith("epochs")
                                                                          and getattr(args, name) == 0):
            from model.errors import AlzAuditError

            raise AlzAuditError(f"--{name.replace('_', '-')}: must be positive, got {getattr(args, name)}")
    if not 0.0 <= args.dropout < 1.0:
        from model.errors import AlzAuditError

        raise AlzAuditError(f"--dropout: must be in [0, 1), got {args.dropout}")
    config = TrainConfig(data=args.data, out=args.out, backbone=args.backbone, weights=weights,
                         input_size=input_size, batch_size=args.batch_size, epochs_phase1=args.epochs1,
                         epochs_phase2=args.epochs2, lr_phase1=args.lr1, lr_phase2=lr2, patience=args.patience,
                         class_weight=None if args.class_weight == "none" else args.class_weight,
                         phases=args.phases, augment=not args.no_augment, seed=args.seed, ratios=args.ratios,
                         group=args.group, lr_schedule=args.lr_schedule,
                         augment_noise=args.augment_noise, dropout=args.dropout, strategy=args.strategy,
                         average_last=args.average_last, precise_bn=not args.no_precise_bn, flip=args.flip,
                         augment_intensity=args.augment_intensity)
    from audit.leakage import pseudo_subjects  # near-duplicate groups: the application binds them to training

    train(config, resume=args.resume, console=Console(),
          group_by=pseudo_subjects if args.group == "pseudo" else None)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from model.evaluate_run import evaluate_model, print_report

    out = Path(args.out) if args.out else Path(args.model).resolve().parent / f"eval_{args.split}"
    metrics = evaluate_model(args.model, args.data, split=args.split, out_dir=out, seed=args.seed,
                             input_scale=args.input_scale, classes=args.classes, unsafe=args.unsafe_load,
                             n_resamples=args.bootstrap)
    print_report(metrics, Console())
    print(f"wrote {out / 'predictions.csv'} and {out / 'metrics.json'}")
    return 0
