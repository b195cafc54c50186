"""SpeechBrain reference models the bench and the tests compare emosup against."""


def encoder_classifier(input_size=80, out_neurons=2, state_dict=None, device="cpu", **ecapa_kwargs):
    """SpeechBrain's `EncoderClassifier` around its own modules, built here so that nothing is
    downloaded: `Fbank(n_mels=80)`, sentence mean normalisation, `ECAPA_TDNN(input_size,
    **ecapa_kwargs)` with `state_dict` loaded when given, and a `Classifier` with `out_neurons`
    outputs (not used by `encode_batch`); in eval mode, on torch `device`."""
    from speechbrain.inference.classifiers import EncoderClassifier
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, Classifier
    from speechbrain.processing.features import InputNormalization

    model = ECAPA_TDNN(input_size=input_size, **ecapa_kwargs)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    clf = EncoderClassifier(modules={
        "compute_features": Fbank(n_mels=80),
        "mean_var_norm": InputNormalization(norm_type="sentence", std_norm=False),
        "embedding_model": model,
        "classifier": Classifier(input_size=ecapa_kwargs.get("lin_neurons", 192), out_neurons=out_neurons)},
        hparams={}, run_opts={"device": str(device)})
    clf.mods.eval()
    return clf
