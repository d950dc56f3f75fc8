# part-bench: the commands a user runs. PRESET=tiny (default) or paper; SEEDS=N;
# DRY_RUN=1 prints every cell's resolved plan instead of running it.
PY      ?= .venv/bin/python
PRESET  ?= tiny
SEEDS   ?= 1
ARGS    ?=
DRY_RUN ?=
TABLE_ARGS = --preset $(PRESET) --seeds $(SEEDS) $(if $(filter 1,$(DRY_RUN)),--dry-run) $(ARGS)

.PHONY: setup doctor test results table1 table2 table3 table4 table5 table6 table7 fig8 figures speed rank

setup:                     ## create .venv with every package the suite needs (incl. mmcv ops)
	bash scripts/setup.sh

doctor:                    ## versions, and a correctness check of mmcv's compiled ops
	$(PY) -m benchmarks.doctor

test:                      ## the whole test suite (CPU, < 10 minutes)
	$(PY) -m pytest tests

results:                   ## every tiny table, Figure 8, the ranking and Figs 4-6 with today's code
	$(PY) -m benchmarks.results --preset $(PRESET) $(ARGS)

table5:                    ## Table 5: relative encoders (cross-attention, MLP, pairwise MLP)
	$(PY) -m benchmarks.tables table5 $(TABLE_ARGS)

fig8:                      ## Figure 8: accuracy vs #pairs (CSV, Markdown, PNG)
	$(PY) -m benchmarks.tables fig8 $(TABLE_ARGS)

figures:                   ## Figures 4-6: reconstruction, uncertainty, symmetry (PNG)
	$(PY) -m benchmarks.figures --preset $(PRESET) $(ARGS)

speed:                     ## step-time and extraction benchmarks (printed ratios)
	$(PY) -m benchmarks.speed $(ARGS)

table1:                    ## Table 1: PART vs PART + aspect ratio + scale (COCO, IN-1K)
	$(PY) -m benchmarks.tables table1 $(TABLE_ARGS)

table2:                    ## Table 2: COCO detection, MAE / MP3 / DropPos / PART
	$(PY) -m benchmarks.tables table2 $(TABLE_ARGS)

table3:                    ## Table 3: EEG sleep staging (PhysioNet 2018, kappa)
	$(PY) -m benchmarks.tables table3 $(TABLE_ARGS)

table4:                    ## Table 4: PART-grid vs PART (COCO, CIFAR-100, IN-1K, EEG columns)
	$(PY) -m benchmarks.tables table4 $(TABLE_ARGS)

table6:                    ## Table 6: ImageNet-1k rows we implement
	$(PY) -m benchmarks.tables table6 $(TABLE_ARGS)

table7:                    ## Table 7: CIFAR-100 rows we implement
	$(PY) -m benchmarks.tables table7 $(TABLE_ARGS)

rank:                      ## every method's frozen kNN and linear accuracy on cifar100, 3 seeds, 95% intervals
	$(PY) -m benchmarks.rank --preset $(PRESET) $(if $(filter command line environment,$(origin SEEDS)),--seeds $(SEEDS)) $(if $(filter 1,$(DRY_RUN)),--dry-run) $(ARGS)
