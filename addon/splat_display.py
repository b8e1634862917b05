"""Viewport display of a Gaussian point mesh: a Geometry Nodes tree that draws each point as a coloured sphere.

Each vertex gets a low-poly sphere scaled by its Gaussian's standard deviations (`splat_scale`), turned by its
rest rotation (`splat_rotation`) and shaded by a material that reads its colour (`splat_color`, instancer
attribute). The original vertices are joined back in, so the evaluated mesh still has one vertex per
Gaussian at its deformed position (what the render bridge and the consistency test read). The modifier sits
after the Armature modifier, so the spheres follow the rig.
"""

from __future__ import annotations

import bpy

GROUP_NAME = "Pointillist Splats"
MATERIAL_NAME = "Pointillist Splat"
MODIFIER_NAME = "Splats"
COLOR_ATTR, SCALE_ATTR, ROTATION_ATTR = "splat_color", "splat_scale", "splat_rotation"


def _named_attribute(tree, name: str, data_type: str, location: tuple[float, float]):
    node = tree.nodes.new("GeometryNodeInputNamedAttribute")
    node.data_type = data_type
    node.inputs["Name"].default_value = name
    node.location = location
    return node


def ensure_material() -> bpy.types.Material:
    """The splat material (reused): base colour and alpha from the instancer's `splat_color`."""
    mat = bpy.data.materials.get(MATERIAL_NAME)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(MATERIAL_NAME)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    attr = nodes.new("ShaderNodeAttribute")
    attr.attribute_type = "INSTANCER"
    attr.attribute_name = COLOR_ATTR
    attr.location = (-300, 200)
    links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    links.new(attr.outputs["Alpha"], bsdf.inputs["Alpha"])
    mat.diffuse_color = (0.8, 0.65, 0.55, 1.0)  # what Solid shading shows
    return mat


def ensure_node_group() -> bpy.types.NodeTree:
    """The display node group (reused across avatars): points -> instanced spheres + the points themselves."""
    tree = bpy.data.node_groups.get(GROUP_NAME)
    if tree is not None:
        return tree
    tree = bpy.data.node_groups.new(GROUP_NAME, "GeometryNodeTree")
    tree.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    tree.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, links = tree.nodes, tree.links
    group_in = nodes.new("NodeGroupInput")
    group_in.location = (-600, 0)
    group_out = nodes.new("NodeGroupOutput")
    group_out.location = (600, 0)
    sphere = nodes.new("GeometryNodeMeshIcoSphere")
    sphere.inputs["Radius"].default_value = 1.0
    sphere.inputs["Subdivisions"].default_value = 1
    sphere.location = (-350, -250)
    instance = nodes.new("GeometryNodeInstanceOnPoints")
    instance.location = (0, 0)
    scale = _named_attribute(tree, SCALE_ATTR, "FLOAT_VECTOR", (-350, -450))
    rotation = _named_attribute(tree, ROTATION_ATTR, "QUATERNION", (-350, -650))
    material = nodes.new("GeometryNodeSetMaterial")
    material.inputs["Material"].default_value = ensure_material()
    material.location = (200, 0)
    join = nodes.new("GeometryNodeJoinGeometry")
    join.location = (400, 0)
    links.new(group_in.outputs[0], instance.inputs["Points"])
    links.new(sphere.outputs["Mesh"], instance.inputs["Instance"])
    links.new(scale.outputs["Attribute"], instance.inputs["Scale"])
    links.new(rotation.outputs["Attribute"], instance.inputs["Rotation"])
    links.new(instance.outputs["Instances"], material.inputs["Geometry"])
    links.new(material.outputs["Geometry"], join.inputs["Geometry"])
    links.new(group_in.outputs[0], join.inputs["Geometry"])  # keep the points: one vertex per Gaussian
    links.new(join.outputs["Geometry"], group_out.inputs[0])
    return tree


def add_display_modifier(obj: bpy.types.Object) -> bpy.types.Modifier:
    """Append the splat display (after any Armature modifier, so it shows the posed splats)."""
    mod = obj.modifiers.new(MODIFIER_NAME, "NODES")
    mod.node_group = ensure_node_group()
    return mod
