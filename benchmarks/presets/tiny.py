# The tiny preset: every method and task on a 2-core CPU in minutes, on embedded data
# that the suite generates on first use (in the real on-disk formats, read by the
# real loaders). Numbers from this preset show the pipeline works and how methods
# rank at toy scale; they are not the paper's numbers.
#
# Copy this file to make a new scale; override single values on the command line:
#   python -m benchmarks.run --method part --task cifar100 --cfg-options methods.part.num_pairs=1024
preset = "tiny"

_encoder_32 = dict(arch="vit_micro", img_size=32, patch_size=4, in_chans=3)  # N = 64 patches
_encoder_64 = dict(arch="vit_micro", img_size=64, patch_size=8, in_chans=3)  # N = 64 patches (coco)

# One pretraining schedule for every method (the same images, epochs and optimiser).
_pretrain_32 = dict(
    epochs=6, batch_size=64, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95),
    warmup_epochs=1, num_workers=1, log_interval=20,
    # Random resized crop only: the embedded scenes' backgrounds run left to right,
    # and a flip would make x ambiguous at this tiny scale.
    augment=dict(rrc_scale=(0.6, 1.0), hflip=False),
)

# DeiT recipe (timm), scaled down in epochs.
_finetune_32 = dict(
    epochs=6, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_epochs=1, min_lr=1e-5,
    layer_decay=0.75, drop_path=0.1, rand_augment="rand-m9-mstd0.5-inc1-mmax9", mixup=0.8,
    cutmix=1.0, smoothing=0.1, reprob=0.25, rrc_scale=(0.6, 1.0), num_workers=1,
    log_interval=20,
)

# Method configs (the same pretraining schedule for all). Decoders are scaled down
# with the encoder; the paper preset has the public recipes' sizes.
_mp3 = dict(mask_ratio=0.75)
methods = dict(
    part=dict(num_pairs=2048, head="cross_attention"),
    **{"part-grid": dict(num_pairs=2048, head="cross_attention")},
    **{"part-aspect-scale": dict(num_pairs=2048, head="cross_attention")},
    mae=dict(mask_ratio=0.75, decoder_dim=64, decoder_depth=2, decoder_heads=4,
             norm_pix_loss=True),
    droppos=dict(mask_ratio=0.75, pos_mask_ratio=0.75, decoder_dim=64, decoder_depth=1,
                 decoder_heads=4, position_smoothing=True, attentive_reconstruction=True),
    mp3=_mp3,
    **{"mp3-nope": _mp3},
    scratch=dict(),
    **{"scratch-nope": dict()},
)

tasks = dict(
    cifar100=dict(
        dataset="cifar100", encoder=_encoder_32, pretrain=_pretrain_32, finetune=_finetune_32,
        # embedded data: CIFAR-100's on-disk format, 10 classes of generated scenes
        embedded=dict(num_train=4000, num_test=1000, num_classes=10, seed=0),
    ),
    imagenet=dict(
        dataset="imagenet", encoder=dict(_encoder_32), pretrain=_pretrain_32,
        finetune=_finetune_32,
        embedded=dict(num_train=2000, num_val=500, size=32, num_classes=10, seed=1),
    ),
    pretext=dict(source="cifar100", batch_size=100, max_images=500, eval_seed=1234),
    coco=dict(
        # Pretraining: the imagenet task's schedule on embedded ImageFolder scenes at
        # 64x64, patch 8 (N = 64 patches, as at 32/4), so the detector's 96x96 inputs
        # give a 12x12 token grid and a pyramid of strides 2, 4, 8, 16 (+ 32 for the RPN).
        encoder=_encoder_64, pretrain=_pretrain_32,
        pretrain_data=dict(embedded=dict(num_train=2000, num_val=500, size=64, num_classes=10,
                                         seed=1)),
        detector=dict(
            img_size=96, window_size=4, global_blocks=(3,),  # ViT-B: 14, (2, 5, 8, 11)
            drop_path=0.1, use_rel_pos=True, neck_channels=64, fc_channels=256,
            bbox_convs=0, bbox_fcs=2, mask_convs=2,  # ViTDet: 4 convs + 1 fc, 4 mask convs
            anchor_scale=8,
            # Fewer proposals and RoIs than ViTDet (<= 4 objects in a 96 px scene), and
            # 2x2 RoIAlign samples per bin instead of adaptive: RoIAlign's CPU backward
            # was 40 % of a step (0.67 s -> 0.40 s per iteration, batch 8).
            roi_sampling_ratio=2,
            rpn_train=dict(num=128, nms_pre=300, max_per_img=100),
            rcnn_train=dict(num=32),
            rpn_test=dict(nms_pre=300, max_per_img=100),
            rcnn_test=dict(score_thr=0.05, max_per_img=50),
        ),
        finetune=dict(
            # ViTDet's recipe (AdamW 1e-4, wd 0.1, layer decay 0.7, step drops at the
            # fractions 163889/184375 and 177546/184375 of training, warmup 250/184375
            # of it). Scaled for a CPU: 6 epochs like the other tiny tasks (the paper's
            # 1x is 12), batch 8, lr 4e-4 (assumption: a larger lr for the short toy
            # schedule), warmup half an epoch, and a narrower resize range (the embedded
            # scenes' small objects vanish below ~0.5x of 96 px).
            epochs=6, batch_size=8, lr=4e-4, weight_decay=0.1, betas=(0.9, 0.999),
            layer_decay=0.7, warmup_epochs=0.5, lr_steps=(163889 / 184375, 177546 / 184375),
            resize_ratio=(0.5, 1.5), hflip=0.5, pad_val=114, min_size=0, num_workers=1,
            log_interval=20, test_batch_size=4,
        ),
        # embedded data: COCO 2017 layout, 10 categories with non-contiguous ids
        embedded=dict(num_train=320, num_val=100, size=96, num_classes=10, seed=2, max_objects=4),
    ),
)
