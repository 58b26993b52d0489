"""Where each Keras layer's weights are in the file: legacy ``layer_names``/``weight_names`` groups
or Keras 3's ``layers/<auto name>/vars/<i>``, split among the layers of nested models. Datasets are
read (through ``HDF5.array``'s checks) only when a converter takes them."""

from lrptool.errors import GraphError

from .keras_errors import DAMAGED


class StoredWeight:
    """One weight dataset, read and checked when a converter takes it (``np.asarray``): only the
    weights of converted layers are read, and each problem is reported for its layer."""

    def __init__(self, h5, dataset, name):
        self.h5 = h5
        self.dataset = dataset
        self.name = name
        self.value = None

    def __array__(self, dtype=None, copy=None):
        if self.value is None:
            self.value = self.h5.array(self.dataset, f"weight {self.name!r}")
        return self.value if dtype is None else self.value.astype(dtype)


class WeightStore:
    """Weight datasets by layer name, from legacy ``layer_names``/``weight_names`` groups or a Keras 3
    ``.weights.h5`` (``layers/<auto name>/vars/<i>`` with the layer name as an attribute).
    ``where(layer name)`` says how messages name a layer."""

    def __init__(self, h5, group, where):
        import h5py

        self.h5 = h5
        self.where = where
        self.arrays = {}
        self.names = {}
        self.children = {}
        layer_names = h5.names_attr(group, "layer_names", "the weights")
        if layer_names:
            for layer_name in layer_names:
                sub = h5.member(group, layer_name, where(layer_name), h5py.Group)
                if sub is None:
                    continue
                weight_names = h5.names_attr(sub, "weight_names", where(layer_name))
                datasets = [h5.member(sub, w, where(layer_name), h5py.Dataset) for w in weight_names]
                missing = [w for w, dataset in zip(weight_names, datasets) if dataset is None]
                if missing:
                    raise GraphError(f"{h5.path}: {where(layer_name)}: weights {missing} are listed but not stored; "
                                     f"{DAMAGED}")
                self.names[layer_name] = weight_names
                self.arrays[layer_name] = [StoredWeight(h5, d, w) for d, w in zip(datasets, weight_names)]
            return
        layers = h5.member(group, "layers", "the weights", h5py.Group)
        for key in h5.keys(layers, "the weights") if layers is not None else ():
            # Keras 3 names these groups after the layer class, so the layer name is read from ``vars``.
            sub = h5.member(layers, key, f"weights {key!r}", h5py.Group)
            variables = h5.member(sub, "vars", f"weights {key!r}", h5py.Group)
            if variables is None:
                continue
            layer_name = h5.text_attr(variables, "name", f"weights {key!r}") or ""
            count = len(h5.keys(variables, where(layer_name)))
            datasets = [h5.member(variables, str(i), where(layer_name), h5py.Dataset) for i in range(count)]
            if any(dataset is None for dataset in datasets):
                h5.fail(where(layer_name), f"weights {key!r} are not numbered 0 to {count - 1}")
            self.arrays[layer_name] = [StoredWeight(h5, d, f"{key}/vars/{i}") for i, d in enumerate(datasets)]
            self.names[layer_name] = [str(i) for i in range(count)]
            if h5.member(sub, "layers", where(layer_name), h5py.Group) is not None:
                self.children[layer_name] = sub

    def get(self, layer_name):
        return list(self.arrays.get(layer_name, []))

    def nested(self, model_name, inner_layers):
        """Split a nested model's flat weight list among its layers by the layer name in each path."""
        if model_name in self.children:
            return WeightStore(self.h5, self.children[model_name], self.where)
        arrays = self.arrays.get(model_name, [])
        names = self.names.get(model_name, [])
        store = WeightStore.__new__(WeightStore)
        store.h5, store.where = self.h5, self.where
        store.arrays, store.names, store.children = {}, {}, {}
        inner = set(inner_layers)
        for weight_name, array in zip(names, arrays):
            parts = weight_name.split("/")
            owner = next((p for p in reversed(parts[:-1]) if p in inner), None)
            if owner is None:
                continue
            store.arrays.setdefault(owner, []).append(array)
            store.names.setdefault(owner, []).append(weight_name)
        return store
