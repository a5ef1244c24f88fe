"""The leak rule every reader of generated images applies: no image, and no model, that saw a run's test env,
unless the run opts in with the hparam ``UNSAFE_generator_saw_test_env`` (never a default; ablations only).
Which model that is for a run: ``diffusion.choice``."""

UNSAFE = "UNSAFE_generator_saw_test_env"  # the opt-in hparam: read images of a model that saw the test env


class GeneratorLeakError(RuntimeError):
    """A run would use a diffusion model that was trained on one of its test envs."""


def seen_test_envs(model_trained_on, test_env_names):
    """The run's test envs among a model's training envs (none when they are unknown)."""
    return sorted(set(model_trained_on or ()) & set(test_env_names))


def check(model_name, model_trained_on, test_env_names, hparams, what):
    """Raise unless the model saw none of the test envs, or the run opted in (then say so loudly)."""
    seen = seen_test_envs(model_trained_on, test_env_names)
    if not seen:
        return
    if hparams.get(UNSAFE, False):
        print(f"WARNING: {what} uses {model_name}, which was trained on test env(s) {seen} "
              f"({UNSAFE}=True): its numbers measure a generator that saw the test domain", flush=True)
        return
    raise GeneratorLeakError(
        f"{what}: the diffusion model {model_name} was trained on this run's test env(s) {seen}, so its images "
        f"could carry the test domain. Use the model that excludes the test env (diffusion model 'embedded' "
        f"picks it on DigitStyles), or opt in with the hparam {UNSAFE}=true for an ablation.")
