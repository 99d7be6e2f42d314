"""A shape-only stand-in for `torch`, `torchvision.models.resnet` and `safetensors.torch`, to run
the README's PyTorch builder (`build_resnet_from(meta)` and the strict load that follows it,
README "Export for fine-tuning") where PyTorch is not installed (CI).

Modules hold only their parameter and buffer shapes; `state_dict()` gives {key: shape} with
torch's naming (children in assignment order, a replaced child keeps its place), and
`load_state_dict(sd, strict=True)` raises as torch does on missing or unexpected keys and on any
shape mismatch. The ResNet part follows torchvision 0.28's resnet.py in what a builder may rely
on: `ResNet.__init__` (stem, `inplanes`, four `_make_layer` stages, fc), `_make_layer` (a
downsample where the stride or the width changes, `inplanes` advanced to planes * expansion), the
blocks' constructors (inplanes, planes, stride, downsample) and their layers. `safetensors`
serves files given in memory ({name: (metadata, {key: array})}), so the README's code runs
unchanged.
"""
import types


class Module:
    def __init__(self):
        object.__setattr__(self, "_children", {})
        object.__setattr__(self, "_shapes", {})

    def __setattr__(self, name, value):
        if isinstance(value, Module):
            self._children[name] = value  # a replaced child keeps its position, as in torch
        object.__setattr__(self, name, value)

    def state_dict(self, prefix=""):
        out = {f"{prefix}{k}": v for k, v in self._shapes.items()}
        for name, child in self._children.items():
            out.update(child.state_dict(f"{prefix}{name}."))
        return out

    def load_state_dict(self, state_dict, strict=True):
        """torch's checks (arrays stand in for tensors): every shape must match; with strict,
        the key sets must be equal."""
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
        wrong = {k: (tuple(state_dict[k].shape), own[k]) for k in set(own) & set(state_dict)
                 if tuple(state_dict[k].shape) != own[k]}
        if wrong or (strict and (missing or unexpected)):
            raise RuntimeError(f"Error(s) in loading state_dict: missing {missing}, unexpected "
                               f"{unexpected}, size mismatch (checkpoint, model) {wrong}")
        return types.SimpleNamespace(missing_keys=missing, unexpected_keys=unexpected)

    def eval(self):
        return self


class Conv2d(Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True):
        super().__init__()
        self._shapes["weight"] = (out_channels, in_channels // groups, kernel_size, kernel_size)
        if bias:
            self._shapes["bias"] = (out_channels,)


class BatchNorm2d(Module):
    def __init__(self, num_features):
        super().__init__()
        for name in ("weight", "bias", "running_mean", "running_var"):
            self._shapes[name] = (num_features,)
        self._shapes["num_batches_tracked"] = ()


class Linear(Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self._shapes.update(weight=(out_features, in_features), bias=(out_features,))


class Sequential(Module):
    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)


class Identity(Module):
    def __init__(self, *args, **kwargs):
        super().__init__()


ReLU = MaxPool2d = AdaptiveAvgPool2d = Identity  # no parameters


def conv1x1(in_planes, out_planes, stride=1):
    return Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1):
    return Conv2d(in_planes, out_planes, 3, stride=stride, padding=dilation, groups=groups, bias=False,
                  dilation=dilation)


class BasicBlock(Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(inplanes, planes, stride), BatchNorm2d(planes)
        self.relu = ReLU()
        self.conv2, self.bn2 = conv3x3(planes, planes), BatchNorm2d(planes)
        if downsample is not None:
            self.downsample = downsample


class Bottleneck(Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1, self.bn1 = conv1x1(inplanes, width), BatchNorm2d(width)
        self.conv2, self.bn2 = conv3x3(width, width, stride, groups, dilation), BatchNorm2d(width)
        self.conv3, self.bn3 = conv1x1(width, planes * self.expansion), BatchNorm2d(planes * self.expansion)
        self.relu = ReLU()
        if downsample is not None:
            self.downsample = downsample


class ResNet(Module):
    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes, self.dilation, self.groups, self.base_width = 64, 1, 1, 64
        self.conv1 = Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = BatchNorm2d(self.inplanes)
        self.relu, self.maxpool = ReLU(), MaxPool2d()
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = AdaptiveAvgPool2d()
        self.fc = Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                    BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, self.dilation)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation))
        return Sequential(*layers)


class _SafeOpen:
    def __init__(self, files, name, framework):
        if name not in files:
            raise FileNotFoundError(name)
        self._metadata = files[name][0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def metadata(self):
        return dict(self._metadata)


def modules(files=None) -> dict:
    """{module name: module} to put in sys.modules in place of torch, torchvision and
    safetensors; `files`: {file name: (metadata, {key: array})} that safetensors serves."""
    files = dict(files or {})
    torch = types.ModuleType("torch")
    torch.nn = types.ModuleType("torch.nn")
    for cls in (Module, Conv2d, BatchNorm2d, Linear, Sequential, Identity):
        setattr(torch.nn, cls.__name__, cls)
    torchvision = types.ModuleType("torchvision")
    torchvision.models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.BasicBlock, resnet.Bottleneck, resnet.ResNet = BasicBlock, Bottleneck, ResNet
    torchvision.models.resnet = resnet
    safetensors = types.ModuleType("safetensors")
    safetensors.safe_open = lambda name, framework: _SafeOpen(files, str(name), framework)
    safetensors.torch = types.ModuleType("safetensors.torch")
    safetensors.torch.load_file = lambda name: dict(files[str(name)][1])
    return {"torch": torch, "torch.nn": torch.nn, "torchvision": torchvision,
            "torchvision.models": torchvision.models, "torchvision.models.resnet": resnet,
            "safetensors": safetensors, "safetensors.torch": safetensors.torch}
