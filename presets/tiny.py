# The tiny preset: every method and task on a 2-core CPU in minutes, on embedded data
# that the suite generates on first use (in the real on-disk formats, read by the
# real loaders). Numbers from this preset show the pipeline works and how methods
# rank at toy scale; they are not the paper's numbers.
#
# A preset only overrides: every value not written here is the default of its section
# in engine/plan.py (the paper's protocol) or of the method's constructor. Batch sizes
# are global. `python -m benchmarks.run --method part --task cifar100 --dry-run` prints
# every resolved value and where it came from. Override single values on the command line:
#   python -m benchmarks.run --method part --task cifar100 --cfg-options methods.part.num_pairs=1024
preset = "tiny"

_encoder_32 = dict(arch="vit_micro", img_size=32, patch_size=4)  # N = 64 patches
_encoder_64 = dict(arch="vit_micro", img_size=64, patch_size=8)  # N = 64 patches (coco)

# One pretraining schedule for every method (the same images, epochs and optimiser).
_pretrain_32 = dict(
    epochs=6, global_batch_size=64, base_lr=1e-3, lr_reference_batch=64, warmup_epochs=1,
    # Random resized crop only: the embedded scenes' backgrounds run left to right,
    # and a flip would make x ambiguous at this tiny scale.
    augment=dict(rrc_scale=(0.6, 1.0), hflip=False),
)

# DeiT's schedule (the finetune defaults), scaled down: 6 epochs but at least 500
# optimizer steps (a small real data set, e.g. 1.5k images = 23 steps an epoch, gets 22
# epochs; the embedded 4000 images, 62 steps an epoch, get 9), lr 1e-3 at batch 64,
# warmup 1 epoch, DeiT's padded crop at these 32 px inputs (finetune.small_input_pad;
# rrc_scale applies only to larger inputs), no repeated augmentation (3 repeats of 6 epochs would
# show each image in only 2 epochs' worth of distinct draws). DeiT's regularisers are
# off (Mixup, CutMix, RandAugment, random erasing; colour jitter, which timm applies only
# without RandAugment, too): made for 300 epochs of 1.2M images, at a few hundred steps
# they hold a small real data set at the class prior (label smoothing 0.1 stays).
_finetune_32 = dict(
    epochs=6, min_steps=500, global_batch_size=64, base_lr=1e-3, lr_reference_batch=64,
    warmup_epochs=1, rrc_scale=(0.6, 1.0), repeated_aug=1,
    mixup=0.0, cutmix=0.0, rand_augment=None, reprob=0.0, color_jitter=0.0,
)

# The linear probe on frozen features (--protocol linear): 100 epochs but at least 1000
# steps, lr 0.1 at batch 256 on standardised features (our choice: on a random encoder's
# features of 1.5k real digits, the default 1e-3 reached 46 % in 500 steps, 0.1 75 % in 1000).
_probe = dict(epochs=100, min_steps=1000, base_lr=0.1)

_loader = dict(num_workers=1, log_interval=20)

# EEG: the 1D encoder over 30 s windows of 6 channels at 100 Hz, 1 s patches (30 tokens)
_encoder_eeg = dict(arch="vit_micro", img_size=3000, patch_size=100, in_chans=6, modality="1d")

# Decoders are scaled down with the encoder; the paper preset has the public recipes' sizes.
methods = dict(
    mae=dict(decoder_dim=64, decoder_depth=2, decoder_heads=4),
    droppos=dict(decoder_dim=64, decoder_depth=1, decoder_heads=4),
)

tasks = dict(
    cifar100=dict(
        # embedded data: CIFAR-100's on-disk format, 10 classes of generated scenes
        data=dict(dataset="cifar100", embedded=dict(num_train=4000, num_test=1000,
                                                     num_classes=10, seed=0)),
        encoder=_encoder_32, pretrain=_pretrain_32, finetune=_finetune_32, probe=_probe,
        loader=_loader,
    ),
    imagenet=dict(
        data=dict(dataset="imagenet", embedded=dict(num_train=2000, num_val=500, size=32,
                                                     num_classes=10, seed=1)),
        encoder=_encoder_32, pretrain=_pretrain_32, finetune=_finetune_32, probe=_probe,
        loader=_loader,
    ),
    pretext=dict(source="cifar100", evaluation=dict(batch_size=100, max_images=500)),
    eeg=dict(
        # embedded data: PhysioNet 2018's layout, 24 labelled + 6 unlabelled 1-hour records
        data=dict(dataset="physionet2018", embedded=dict(n_training=24, n_test=6, hours=1.0,
                                                         seed=3)),
        encoder=_encoder_eeg,
        pretrain=dict(epochs=10, global_batch_size=64, base_lr=1e-3, lr_reference_batch=64,
                      warmup_epochs=1),
        # 10 finetuning subjects as the paper's, scaled: 4 subjects, 30 epochs (~200 steps)
        finetune=dict(epochs=30, global_batch_size=64, base_lr=1e-3, lr_reference_batch=64,
                      warmup_epochs=2),
        eeg=dict(pretrain_subjects=20, finetune_subjects=4, test_subjects=6, scale_down=True,
                 cache_workers=2),
        probe=_probe,
        # PART: 40 random 1 s windows per 30 s window (the paper's), PART-grid the 30 grid
        # patches; 256 pairs each (our choice: the relative head's cost grows with pairs)
        method_overrides={"part": dict(num_patches=40, num_pairs=256),
                          "part-grid": dict(num_patches=30, num_pairs=256)},
        loader=_loader,
    ),
    coco=dict(
        # embedded data: COCO 2017 layout, 10 categories with non-contiguous ids
        data=dict(dataset="coco", embedded=dict(num_train=320, num_val=100, size=96,
                                                num_classes=10, seed=2, max_objects=4)),
        # Pretraining: the imagenet task's schedule on embedded ImageFolder scenes at
        # 64x64, patch 8 (N = 64 patches, as at 32/4), so the detector's 96x96 inputs
        # give a 12x12 token grid and a pyramid of strides 2, 4, 8, 16 (+ 32 for the RPN).
        encoder=_encoder_64, pretrain=_pretrain_32,
        pretrain_data=dict(dataset="imagenet", embedded=dict(num_train=2000, num_val=500,
                                                             size=64, num_classes=10, seed=1)),
        detector=dict(
            img_size=96, window_size=4, global_blocks=(3,),  # ViT-B: 14, (2, 5, 8, 11)
            neck_channels=64, fc_channels=256,
            bbox_convs=0, bbox_fcs=2, mask_convs=2,  # ViTDet: 4 convs + 1 fc, 4 mask convs
            # Fewer proposals and RoIs than ViTDet (<= 4 objects in a 96 px scene), and
            # 2x2 RoIAlign samples per bin instead of adaptive: RoIAlign's CPU backward
            # was 40 % of a step (0.67 s -> 0.40 s per iteration, batch 8).
            roi_sampling_ratio=2,
            rpn_train=dict(num=128, nms_pre=300, max_per_img=100),
            rcnn_train=dict(num=32),
            rpn_test=dict(nms_pre=300, max_per_img=100),
            rcnn_test=dict(max_per_img=50),
        ),
        # ViTDet's recipe (the defaults) scaled for a CPU: 6 epochs like the other tiny
        # tasks (the paper's 1x is 12), batch 8, lr 4e-4 at batch 8 (our choice: a larger
        # lr for the short toy schedule), warmup half an epoch, a narrower resize range
        # (the embedded scenes' small objects vanish below ~0.5x of 96 px), no min size.
        finetune=dict(
            epochs=6, global_batch_size=8, base_lr=4e-4, lr_reference_batch=8,
            warmup_epochs=0.5, resize_ratio=(0.5, 1.5), min_size=0, test_batch_size=4,
        ),
        loader=_loader,
    ),
)
