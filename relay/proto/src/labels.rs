//! Enums whose every variant is counted under a metric label. The variants, their labels and the
//! complete list come from one declaration, so a new variant cannot miss its label, its counter
//! or its line in the metrics.

/// Declares a fieldless enum with a stable label for each variant (`Variant => "label"`), plus
/// `ALL` (every variant, in declaration order) and `as_str` (the label).
macro_rules! labelled_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$(stringify!($variant)),+].len()] = [$($name::$variant),+];

            /// The variant's name as a metric label value; stable across releases.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

pub(crate) use labelled_enum;
