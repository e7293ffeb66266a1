pub mod crypt;
pub mod store;
